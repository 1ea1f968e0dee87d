"""Feature computation: activity windows, graph structure and metadata for the nightly `features` table."""
