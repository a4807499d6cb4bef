"""The augmentation picture a trial renders: a small, valid PNG titled with its settings."""

from __future__ import annotations

import io

import torch
from PIL import Image

from toolbox.config import AugmentConfig, TrialConfig
from workers.trial.samples import augmentation_title, render_samples, samples_png

AFFINE = AugmentConfig(affine_p=0.5, rotate_deg=15.0)


def test_the_picture_is_a_png_of_two_rows_of_eight_digits_in_tens_of_kilobytes() -> None:
    png = render_samples(TrialConfig(augment=AFFINE, device="cpu"))
    image = Image.open(io.BytesIO(png))
    image.verify()
    assert image.format == "PNG"
    width, height = image.size
    assert width > 2 * height  # eight columns, two rows
    assert len(png) < 50_000


def test_rgb_images_render_too() -> None:
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    png = samples_png(images, images.flip(-1), "augment: hflip_p=1")
    assert Image.open(io.BytesIO(png)).format == "PNG"


def test_the_title_names_the_settings_that_are_switched_on() -> None:
    assert augmentation_title(AFFINE) == "augment: affine_p=0.5, rotate_deg=15"
    assert augmentation_title(AugmentConfig()) == "no augmentation"
    # a strength without its probability changes nothing, and is not named
    assert augmentation_title(AugmentConfig(rotate_deg=15.0)) == "no augmentation"


def test_a_picture_rendered_once_is_read_by_later_workers_and_the_folder_stays_bounded(
    tmp_path, monkeypatch
) -> None:
    from workers.trial import pack

    rendered: list[TrialConfig] = []

    def render(cfg: TrialConfig) -> bytes:
        rendered.append(cfg)
        return render_samples(cfg)

    monkeypatch.setattr(pack, "samples_picture", render)
    monkeypatch.setattr(pack, "PICTURES_KEPT", 2)
    cfg = TrialConfig(augment=AFFINE, device="cpu")
    first = pack._kept_picture(str(tmp_path), "affine seed 0", cfg)
    assert pack._kept_picture(str(tmp_path), "affine seed 0", cfg) == first  # another worker
    assert len(rendered) == 1
    for what in ("affine seed 1", "affine seed 2"):
        pack._kept_picture(str(tmp_path), what, cfg)
    assert len(rendered) == 3 and len(list(tmp_path.glob("*.png"))) == 2  # the oldest went
    assert not list(tmp_path.glob(".*"))  # no half-written file is left
    (tmp_path / "blocked").write_text("a file where the folder should be")
    assert pack._kept_picture(str(tmp_path / "blocked"), "affine seed 0", cfg) == first
    assert len(rendered) == 4  # an unusable folder costs the rendering, nothing else
