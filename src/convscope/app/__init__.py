"""The application layer: reports written from results, and the demo."""
