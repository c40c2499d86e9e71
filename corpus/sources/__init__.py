"""Sources: each yields :class:`~corpus.sources.base.SourceItem` s for the ingest step."""
