"""Feature visualisation: one optimised image per channel, the stage that runs it, and its cache."""
