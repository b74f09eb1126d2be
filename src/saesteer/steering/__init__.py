"""saesteer.steering"""
