"""Parallel layouts: the layout type, process groups, memory estimates, local worlds of ranks.

- dims.py         ParallelDims: degrees, checks, each rank's coordinates, the printed form
- distributed.py  torch.distributed + megatron-core groups (+ DeepSpeed comms) for a layout
- topology.py     megatron-core's groups and DeepSpeed's topology agree; DeepSpeed's `mpu`
- memory.py       estimated memory per rank (the dry run's table)
- local_world.py  a function on N spawned CPU ranks, for tools that need a layout's processes
- fork_server.py  imported first by local_world's fork server: it dies with its caller
- lifetime.py     ranks and loader workers that die with their launcher; who reports a failure
"""
