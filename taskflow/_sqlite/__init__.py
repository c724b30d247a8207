"""Private plumbing shared by the SQLite broker and result store: the schema, the one
connection per backend (on its own thread) and the wake-ups between processes."""
