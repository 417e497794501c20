"""The bottom layer every stage shares: task facts (abaw), atomic writes, devices, the error
family, lazy public names. Imports nothing of the stages or the application layer."""
