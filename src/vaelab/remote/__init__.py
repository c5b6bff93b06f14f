"""Run folders on object storage: `mirror` keeps a copy of a run at an fsspec URL while it trains;
`fetch` brings a remote run (or the checkpoint a command needs) into the local cache."""
