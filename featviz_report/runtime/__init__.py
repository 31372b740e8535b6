"""Where and how a build runs: the device, torch's threads, memory, progress and warnings on the terminal."""
