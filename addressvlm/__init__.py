"""AddressVLM recipes: data tools, model wrappers, inference and metrics for XTuner."""
