"""Tests of Meta's formats (windowgate/meta), with the webhook bodies they read beside them."""
