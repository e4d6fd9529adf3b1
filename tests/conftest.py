"""Shared fixtures for the akidb-embed test suite.

The akidb-embed pytest plugin (fixtures ``mock_provider``, ``embedding_manager``,
``make_embedding_manager`` and the AKIDB_* isolation) is loaded through its
``pytest11`` entry point, exactly as it is for users.
"""
