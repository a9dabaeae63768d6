"""Backlog jobs over files: the resumable scoring job (local or Spark), linking a scored file, and the
tabular IO they share (formats, chunked reads, atomic writes, the job's errors)."""
