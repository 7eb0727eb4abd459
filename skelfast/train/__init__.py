"""skelfast.train"""
