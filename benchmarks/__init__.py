"""`edgeseg bench`: accuracy, latency, memory and size of every model artifact on this machine.

One module per job: discover (what can be benchmarked), worker (one configuration in a fresh
process), latency (timing statistics), complexity (parameters and FLOPs), environment (the
machine), report/plot (outputs), reference (the survey's published numbers) and harness (the
orchestration). Only the worker imports a model runtime, so numbers never bleed between runs.
"""
