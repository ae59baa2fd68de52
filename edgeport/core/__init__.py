"""The ground floor: what every room needs and nothing above it. Imports no other edgeport package."""
