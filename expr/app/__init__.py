"""The application layer above the stages: the typer CLI (cli, commands/), the stages chained
(pipeline) and the demo. Reaches every stage only through its package interface."""
