"""``python -m akidb_embed.bridge``: the python-bridge worker process."""

from akidb_embed.bridge._worker import main

if __name__ == "__main__":
    main()
