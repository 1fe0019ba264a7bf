"""Rendering: spec + plan + operator settings ⇒ plain dicts (trainer config, ConfigMap, Job, Service). Pure."""
