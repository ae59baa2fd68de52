"""Third-party programs edgeport builds for itself and caches (llama.cpp's command-line tools)."""
