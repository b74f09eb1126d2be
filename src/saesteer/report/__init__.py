"""saesteer.report"""
