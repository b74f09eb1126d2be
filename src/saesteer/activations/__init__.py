"""saesteer.activations"""
