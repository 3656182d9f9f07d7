"""The Shapes World (../shared/specs/shapes-world.md): records, renderer, captions, prompt grammar,
the evaluator that judges a video against its prompt, and the evaluation of a model."""
