"""saesteer.sae"""
