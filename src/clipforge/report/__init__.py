"""Reports: self-contained HTML pages with plots (matplotlib) and tables."""
