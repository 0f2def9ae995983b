"""Dev mode: an embedded broker and mail catcher around the service; never imported by `run`."""
