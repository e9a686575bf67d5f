"""The application: the `tickflow` command line, the demo and the HTML report. It sits on top
of everything else (flows, connectors, the domain rules, the contracts) and nothing imports it."""
