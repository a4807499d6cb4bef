"""Sweep jobs on Ray, seen from the API process: submission, warm standby drivers, cancel
deadlines and reconciliation, run by the API's request handlers and its monitor thread."""
