"""Reading inputs and writing outputs: images, input layouts, face tables, video."""
