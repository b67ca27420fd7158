"""Reports and stills: the document (HTML or Markdown), its media and the matplotlib figures."""
