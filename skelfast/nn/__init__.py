"""skelfast.nn"""
