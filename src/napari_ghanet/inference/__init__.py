"""From patches to a prediction: embedding, the prediction stages, its result, exports, maps."""
