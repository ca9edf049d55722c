"""Making and measuring models: data loading, the synthetic generator, training, MAP
evaluation and dataset converters. The inference library (model/) never imports this."""
