"""saesteer.model"""
