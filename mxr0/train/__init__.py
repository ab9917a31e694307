"""The one Accelerate training loop, schedules, checkpoints and run logging."""
