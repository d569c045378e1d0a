"""The detection rules as Prometheus alerting rules, for teams that alert from Prometheus."""
