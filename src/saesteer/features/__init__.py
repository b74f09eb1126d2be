"""saesteer.features"""
