"""The networks on a device: nnU-Net plans, the sliding window on the CPU, the runtimes that run a forward pass,
the allocator and thread settings of a run, and the device list."""
