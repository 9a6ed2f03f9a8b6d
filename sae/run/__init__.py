"""The run machinery both trainings share: config I/O, run folders and files, seeding,
schedules, the Lightning engine (many optimizer steps per call), the trainer factory and the one
fit function, guards and logging. Nothing here knows about SAEs or toy models."""
