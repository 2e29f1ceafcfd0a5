"""Running a tokenizing job: worker processes with a trusted engine (`workers`, `executor`),
the input cut into resumable shards produced by an executor (`shards`; local processes in
`executors`, Ray tasks in `ray`) and merged in order into the final files."""
