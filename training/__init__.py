"""Installed as `dfnet4_sdk.training`."""
