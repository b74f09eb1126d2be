"""saesteer.cli"""
