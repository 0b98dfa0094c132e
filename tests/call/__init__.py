"""Tests of the call path: clients, SDKs, the wire, the stream tap, misbehaving upstreams."""
