"""The models: G-HANet, its baselines, their losses, model bundles and what a risk means."""
