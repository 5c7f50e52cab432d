"""``browser-control view``: a local web page over recorded episodes (evaluation reports, training runs)."""
