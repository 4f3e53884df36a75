"""Installed as `dfnet4_sdk.exporters`."""
