"""saesteer.evaluation"""
