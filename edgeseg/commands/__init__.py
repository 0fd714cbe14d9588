"""Click commands of the `edgeseg` CLI, one module each."""
