"""The data plane: listeners and HTTP/1.1 connections from instances."""
