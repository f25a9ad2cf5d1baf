"""A local stand-in for the parts of Shopify that Kizuna touches (see README: devstore)."""
