"""Text corpora shipped with npgpt (Tiny Shakespeare, public domain)."""
