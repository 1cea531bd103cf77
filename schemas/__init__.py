"""The wire contract shared by producers and workers: jobs, policies, verdicts, events, errors and settings."""
