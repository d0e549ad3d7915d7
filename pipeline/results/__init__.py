"""What a trained model scores and ships: evaluation with the official metrics, depth
pictures, and the challenge submission ZIP.

May import: core, data, model, device, teacher."""
